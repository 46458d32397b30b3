// Package shared is imported by more than one service (scheduler and binder),
// so a change here must rebuild exactly those two.
package shared

import "github.com/google/uuid"

// InstanceID names one running instance of a service.
func InstanceID() string {
	return uuid.NewSHA1(uuid.NameSpaceOID, []byte("kai-mini")).String()
}
