// Package scheduler is compiled into the scheduler binary only.
package scheduler

// Name is what the scheduler calls itself in its logs.
const Name = "kai-mini-scheduler"
