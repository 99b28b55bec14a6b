"""retentiond: enforce a data-retention policy on your own data stores."""

__version__ = "0.1.0"
