"""Default TOML configurations, one per model."""
