package embedded

// WithMigrationProgress makes a migration log a progress line every n events (the default is
// 1,048,576), so that a test sees progress on a small store: the interrupted-migration test
// kills the migrating process at one of them.
func WithMigrationProgress(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.migrationProgress = n
		}
	}
}
