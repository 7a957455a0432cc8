"""minimagen: a compact, tested reference implementation of Imagen (Saharia et al. 2022)."""
