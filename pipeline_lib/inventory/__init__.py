"""From predictive distributions to order-up-to levels, and their backtest."""
