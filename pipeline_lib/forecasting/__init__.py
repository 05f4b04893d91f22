"""Forecasting with the served model: the daily forecast of every series into the store."""
