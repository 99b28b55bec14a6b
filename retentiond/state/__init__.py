"""retentiond's own database: models, engine, migrations runner."""
