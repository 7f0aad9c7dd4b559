"""Labelled text for fine-tuning and attacks, offline: built-in tasks read from pinned registry
packages (`rt tweets bbc vader-amazon vader-nyt vader-tweets vader-movies`) or the user's
`.jsonl`/`.csv` file, deduplicated and split train/validation/test by a seeded hash of the text.
"""

from steadylm.tasks.task import (
    TASK_NAMES,
    Example,
    Task,
    TaskInfo,
    is_cached,
    load_task,
    load_task_info,
)

__all__ = ["TASK_NAMES", "Example", "Task", "TaskInfo", "is_cached", "load_task", "load_task_info"]
