"""The front end: configurations, data sets, figures, the command line."""
