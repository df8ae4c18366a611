"""The bundled field-sales and POS domain: tables, datasets, mutations, demo data."""
