package main

import (
	"fmt"

	"example.com/kai-mini/pkg/scheduler/version"
)

func main() {
	fmt.Println(version.Line("podgrouper"))
}
