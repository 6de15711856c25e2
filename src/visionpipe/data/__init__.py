"""Data layer: built-in data, format readers, validation, augmentation and torch datasets."""
