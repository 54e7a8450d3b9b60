"""Pure-Python core: rule model, parsers, rates. Imports nothing beyond the standard library."""
