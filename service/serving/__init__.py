"""What one process serves: the typed state opened in the lifespan (`state`, `resources`), reloads, following the
bundle registry and items added live. May import experiments, items, recommend, store, core; never api."""
