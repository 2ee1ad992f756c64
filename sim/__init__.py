"""When things happen and who waits: the SimPy engine, its scheduler and its records."""
