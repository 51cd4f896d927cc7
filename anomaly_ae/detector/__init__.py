"""Layer 3, the detector's training glue: configuration, augmentation and synthetic anomalies, losses,
scores, the training loop, validation and the test step, checkpoints, the ensemble. Imports the
statistics (``anomaly_ae.stats``), the data (``anomaly_ae.data``) and the models (``anomaly_ae.models``),
never ``anomaly_ae.tracking``."""
