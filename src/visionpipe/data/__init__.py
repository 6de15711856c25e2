"""Data layer: built-in data, format readers, validation, augmentation and torch datasets.

Below the tasks: a function that needs task behaviour (a reader, a record check, its labels) takes the Task
class as an argument from its caller and never looks a task up by name (README, "The task contract")."""
