"""The CALVIN benchmark, simulator-independent parts: the 34 subtasks and their symbolic rules
(`tasks`), the reference's 1000 evaluation chains (`chains`, shipped in data/), the start-state
layout (`scene`), the subtask oracle on info dicts (`oracle`), instructions, the observation
conventions shared with the dataset converter (`conventions`), the `CalvinEnv` wrapper over any
`CalvinBackend` (`env`) and a scripted fake backend for tests (`fake`). The PyBullet simulator is
an optional backend (`simulator`, installed with `vla sim calvin-setup`)."""
