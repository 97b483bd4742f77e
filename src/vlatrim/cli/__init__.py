"""Thin command-line entry points: each verb is a typed dataclass that parses and calls the library."""
