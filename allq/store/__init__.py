"""Server persistence (persistence.md): storage, file format, log writer, recovery."""
