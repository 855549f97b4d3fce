"""The CALVIN benchmark, simulator-independent parts: the 34 subtasks and their symbolic rules
(`tasks`), the reference's 1000 evaluation chains (`chains`, shipped in data/), the start-state
layout (`scene`), the subtask oracle on info dicts (`oracle`), instructions and the `CalvinEnv`
wrapper over any `CalvinBackend` (`env`). The observation conventions it shares with the dataset
converter are vla.datasets.conventions.calvin; the fake backend tests use is vla.testing.calvin_fake.
The PyBullet simulator is an optional backend (`simulator`, installed with `vla sim calvin-setup`)."""
