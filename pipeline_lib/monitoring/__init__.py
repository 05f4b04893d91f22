"""Daily forecasting and coverage monitoring: store, PIC, retrain policy, alerts, drift."""
