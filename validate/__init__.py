"""The real torch TP/PP runner that measures sharded layers and calibrates hardware profiles."""
