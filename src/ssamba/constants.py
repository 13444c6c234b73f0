"""Constants shared across layers, in one place that imports nothing (the CLI shows them in
``--help`` without loading torch).

The front end's own settings (pre-emphasis, mel range, normalisation statistics) stay in
:mod:`ssamba.audio`; what other modules also need lives here, and audio.py imports it.
"""

SAMPLE_RATE = 16000  # Hz: every model and checkpoint works at 16 kHz mono
NUM_MEL_BINS = 128
FRAME_LENGTH_MS = 25.0  # Kaldi frame length
FRAME_SHIFT_MS = 10.0  # Kaldi frame shift, set explicitly by the official code
FRAMES_PER_SECOND = round(1000 / FRAME_SHIFT_MS)
PATCH = 16  # patch side in mel bins and frames; fixed by the released checkpoints

# File names a labelled data set or a fine-tuned model folder carries.
CLASS_LABELS_FILE = "class_labels_indices.csv"  # AudioSet-style: index,mid,display_name
CLASSES_FILE = "classes.json"  # written next to config.json by fine-tuning: the class names

# Files a folder scan (manifests, recipes, segmenting) takes for audio: libsndfile's formats and
# the containers load_audio decodes with ffmpeg.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".au"}
    | {".wma", ".webm", ".mka", ".caf", ".w64", ".rf64", ".sph", ".nist"}
)
# What to do with a file that cannot be used: stop with an error, or leave it out and count it.
BAD_FILE_POLICIES = ("error", "skip")

# Settings of the embedding and probe commands that --help shows (here, so it loads no torch).
POOLINGS = ("mean", "mean+std", "bands", "bands+std")  # ssamba.embed's clip pooling
EMBEDDING_FORMATS = ("npy", "npz", "safetensors")  # what ssamba embed writes
PROBE_L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)  # the linear probe's L2 choices
PROBE_RESULTS_FILE = "probe_results.json"
