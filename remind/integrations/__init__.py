"""Optional integrations of REMIND with other libraries (each needs its own extra; ``import remind`` imports none)."""
