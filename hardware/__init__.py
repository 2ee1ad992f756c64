"""How long work takes: GPU rooflines, fabrics and the alpha-beta cost of collectives."""
