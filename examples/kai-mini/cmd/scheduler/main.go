package main

import (
	"fmt"

	"example.com/kai-mini/pkg/scheduler"
	"example.com/kai-mini/pkg/shared"
	"example.com/kai-mini/pkg/scheduler/version"
)

func main() {
	fmt.Println(version.Line("scheduler"))
	fmt.Println(scheduler.Name, shared.InstanceID())
}
