// Package matrix holds what every Go program of the client matrix shares: the scenario
// names, the RESULT lines and the environment (compat/clients/SCENARIOS.md).
package matrix

import (
	"fmt"
	"os"
	"sort"
	"strings"
	"time"
)

// BaseTS is the first record timestamp the scenarios use (milliseconds).
const BaseTS int64 = 1_700_000_000_000

// Bootstrap is the server's address, Prefix the name every topic and group starts with.
var (
	Bootstrap = env("BOOTSTRAP", "127.0.0.1:9092")
	Prefix    = env("PREFIX", "go")
)

func env(k, d string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return d
}

// Unsupported is returned by a scenario for a feature the client lacks.
type Unsupported string

func (u Unsupported) Error() string { return string(u) }

// Run runs one scenario and prints its RESULT line.
func Run(name string, f func() error) {
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		err = f()
	}()
	switch e := err.(type) {
	case nil:
		fmt.Printf("RESULT %s PASS\n", name)
	case Unsupported:
		fmt.Printf("RESULT %s UNSUPPORTED %s\n", name, string(e))
	default:
		msg := strings.ReplaceAll(err.Error(), "\n", " ")
		if len(msg) > 300 {
			msg = msg[:300]
		}
		fmt.Printf("RESULT %s FAIL %s\n", name, msg)
	}
}

// Check panics with `what` unless cond holds; Run turns the panic into a FAIL.
func Check(cond bool, what string, args ...any) {
	if !cond {
		panic(fmt.Sprintf(what, args...))
	}
}

// Must panics on err.
func Must(err error, what string) {
	if err != nil {
		panic(fmt.Sprintf("%s: %v", what, err))
	}
}

// Until calls f every 200 ms until it returns true or the time is up; it returns f's last answer.
func Until(d time.Duration, f func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if f() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Names is the set tag0..tag(n-1).
func Names(tag string, n int) map[string]bool {
	out := map[string]bool{}
	for i := 0; i < n; i++ {
		out[fmt.Sprintf("%s%d", tag, i)] = true
	}
	return out
}

// Covers says whether got holds every name of want.
func Covers(got, want map[string]bool) bool {
	for k := range want {
		if !got[k] {
			return false
		}
	}
	return true
}

// Equal says whether two sets are equal.
func Equal(a, b map[string]bool) bool { return len(a) == len(b) && Covers(a, b) }

// Sorted lists a set's members in order, for messages.
func Sorted(s map[string]bool) []string {
	out := make([]string, 0, len(s))
	for k := range s {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
