"""Data: VOC, SBD and folder data sets, paired transforms, and the synthetic VOC-layout set."""
