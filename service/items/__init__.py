"""Items added while serving: their text (`content`), the bundle's ONNX text encoder and item tower
(`item_encoder`), the live catalogue kept in the database (`live_items`). May import recommend, store, core."""
