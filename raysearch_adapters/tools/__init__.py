"""Helper programs that are not part of a search: model conversion."""
