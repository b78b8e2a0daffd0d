"""One module per dataset; each reads the official on-disk layout that its docstring describes and its
``DatasetSpec.layout`` summarises (shown by `fastkd list datasets`)."""
