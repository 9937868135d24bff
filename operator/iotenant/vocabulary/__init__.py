"""The words every layer shares: kinds, labels and names, the contract between a rendered pod and the
service it runs, the topic layout, the tenant database's names. Modules here import nothing of ours,
so any package may import them without making a cycle."""
