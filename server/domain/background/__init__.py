"""The field-sales domain's background jobs: invoice and report PDFs, notice delivery,
dashboards. Handed to the generic runner (jobs/) as the domain's ``JobPlugin``."""
