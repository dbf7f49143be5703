package lab

// SetSetupHook replaces the hook New calls between setup steps; it returns a restore function.
func SetSetupHook(f func(step string) error) (restore func()) {
	old := setupHook
	setupHook = f
	return func() { setupHook = old }
}
