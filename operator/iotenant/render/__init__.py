"""Pure rendering: a CustomerInstance's spec and verified licence claims in, manifests out."""
