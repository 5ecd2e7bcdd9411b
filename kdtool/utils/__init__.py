"""What every layer may use (nothing of kdtool below it but kdtool.errors): atomic writes
(atomic), file hashes (files), locks (lock), logging (log), YAML reading with ConfigError (yamlfile),
splitting work over --nj jobs (jobs), the environment record of results (environment), and where a
stage-4 dump came from (provenance)."""
