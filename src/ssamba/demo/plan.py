"""The demo's plan: its two tasks, the sizes and times of a run (:class:`DemoPlan`, scaled by
the budget), and the views the probe scores. Read by the pipeline that runs it and the report
that presents it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ssamba.errors import UsageError

TASKS = ("keywords", "instruments")


@dataclass
class DemoPlan:
    """Sizes and times of one demo run; ``scaled(budget)`` multiplies them."""

    # Test sets of 240 keyword and 160 instrument clips: with fewer, one clip is ~1 point and
    # differences between models drown in sampling noise.
    keywords_per_class: int = 100
    instruments_per_class: int = 80
    # 60 minutes of the growable mix: in the online-probe study (docs/demo.md) more audio gave
    # both models better keyword features at the same step (SSAST learned none from 12 minutes)
    # and instruments no worse; 240 minutes was no better beyond noise and takes 4x longer to build.
    pretrain_minutes_audio: float = 60.0
    pretrain_minutes: float = 3.0  # wall-clock pretraining time per model
    # wall-clock fine-tuning time per (model, task): in the study (docs/finetuning.md) no
    # variant moved pretrained SSAMBA past its LP-FT start within 300 steps, so a run gets
    # only the minutes that show it (and SSAST, whose steps are ~4x cheaper, what it can add)
    finetune_minutes: float = 0.5
    ssamba_depth: int = 4  # the presets' 2:1 layer ratio (24 Mamba layers : 12 ViT blocks)
    ssast_depth: int = 2
    # Probe on frequency bands (mean and std over time per band): a global mean over the patch
    # grid throws away the spectral layout that the log-mel baseline keeps. Every layer stream
    # is concatenated (as SUPERB-style probes do): after minutes of pretraining the last layer
    # is the most specialised to the pretext task.
    pooling: str = "bands+std"
    probe_layers: str = "all"  # "all" or "last"
    clip_frames: int = 200  # 2 s pretraining clips
    batch_size: int = 16
    lr: float = 5e-4
    # Fine-tuning, the paper's yardstick and the demo's headline (docs/finetuning.md, the
    # study): LP-FT, the head starting as the linear probe of the per-band means and standard
    # deviations of the final output (the probe's own view), a fast head and a gentle encoder.
    finetune_pool: str = "bands+std"
    finetune_lr: float = 1e-4
    finetune_head_lr_mult: float = 10.0
    finetune_head_init: str = "probe"
    finetune_layer_decay: float = 1.0
    # best/ by validation loss: on 240 clips one clip moves accuracy by 0.4 points, and in the
    # study a checkpoint that won by one clip lost 3.7 test points to the probe it started from
    finetune_metric: str = "loss"
    # The rows: SSAMBA pretrained against its random-init self and pretrained SSAST (SSAST from
    # random init taught nothing the other rows do not, and its runs cost demo minutes).
    rows: tuple = (("ssamba", "pretrained"), ("ssamba", "random"), ("ssast", "pretrained"))
    # The linear probe the demo reports: each fine-tuning run's own start (LP-FT's probe of the
    # final output, on the test split; no extra pass), or, with fold_probes, a separate probe of
    # every layer and the final output, the instruments over program folds (the earlier demos'
    # protocol: 3-4 more minutes).
    fold_probes: bool = False
    seed: int = 0
    models: tuple = ("ssamba", "ssast")
    extra: dict = field(default_factory=dict)

    def scaled(self, budget: float) -> DemoPlan:
        if budget <= 0:
            raise UsageError("budget must be > 0")
        plan = DemoPlan(**{**self.__dict__})
        plan.keywords_per_class = max(6, round(self.keywords_per_class * min(budget, 4) ** 0.5))
        plan.instruments_per_class = max(
            6, round(self.instruments_per_class * min(budget, 4) ** 0.5)
        )
        plan.pretrain_minutes_audio = self.pretrain_minutes_audio * budget
        plan.pretrain_minutes = self.pretrain_minutes * budget
        plan.finetune_minutes = self.finetune_minutes * budget
        return plan


# Views of the model that the probe scores, from one embedding pass: every layer stream
# concatenated, and the final output alone (what `ssamba probe` scores by default).
PROBE_VIEWS = ("all", "last")
# A task whose held-out groups are few is probed over folds of them: the instruments test split
# holds 20 instruments (2 per family), and which 20 moves a probe by more than minutes of
# pretraining do (docs/demo.md). Each fold holds one group (program) per class out as test and
# the next as valid, and trains on the rest; every clip is scored once, by a probe that never
# heard its instrument. The keyword test split already holds ~90 unseen voices.
FOLD_GROUPS = {"instruments": "program"}
MIN_FOLDS = 3
