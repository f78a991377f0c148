"""Cloud clients, credentials and one-line errors that both the deploy targets and the model artifacts
(mldeploy.artifacts, which the serving runtime runs) use. Each module imports its SDK lazily."""
