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
