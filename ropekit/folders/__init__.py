"""Safe writes to model folders: atomic files, a lock per folder, a journal that survives kills,
the copying of a model's companion files, and the checks on where ropekit may write."""
