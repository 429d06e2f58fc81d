"""Models after training: loading and predicting, the registry and its aliases, a model's card,
and the servers that open the store and the champion to people and programs."""
