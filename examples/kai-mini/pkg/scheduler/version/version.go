// Package version holds build metadata injected with -ldflags -X, the way
// KAI-Scheduler injects it into its scheduler.
package version

import "fmt"

var (
	gitVersion   = "not provided"
	gitCommit    = "not provided"
	buildDate    = "not provided"
	gitTreeState = "not provided"
)

// Line is the one-line version banner a service prints at start.
func Line(service string) string {
	return fmt.Sprintf("%s version %s (commit %s, %s tree, built %s)", service, gitVersion, gitCommit, gitTreeState, buildDate)
}
