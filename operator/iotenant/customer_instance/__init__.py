"""CustomerInstances: the reconcile, the licence decision, the status rules, and deletion."""
