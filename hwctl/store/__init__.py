"""The SQL store: schema, migrations, per-device vector blobs, readouts and records."""
