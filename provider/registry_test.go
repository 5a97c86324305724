package provider

import (
	"math/rand"
	"sync"
	"testing"
)

// TestRegistryReportsEachUnlistedObjectOnce plans one bundle and its
// objects in every order Terraform could (a listed object always before
// the bundle, an unlisted one anywhere), concurrently, and checks that
// exactly the unlisted objects are reported, each once, by the bundle or by
// itself.
func TestRegistryReportsEachUnlistedObjectOnce(t *testing.T) {
	listed := []string{"a", "b", "c", "d"}
	unlisted := []string{"x", "y"}
	for seed := int64(0); seed < 300; seed++ {
		rnd := rand.New(rand.NewSource(seed))
		r := newRegistry()
		var mu sync.Mutex
		reported := map[string]int{}
		report := func(name string) {
			mu.Lock()
			reported[name]++
			mu.Unlock()
		}
		object := func(name string) {
			if r.object("policy", name, `{"policy":{"name":"`+name+`"}}`) {
				report(name)
			}
		}
		// Listed objects first (the bundle depends on them), concurrently
		// with the unlisted ones, which may also come after the bundle.
		var wg sync.WaitGroup
		late := map[string]bool{}
		for _, n := range unlisted {
			late[n] = rnd.Intn(2) == 0
		}
		for _, n := range listed {
			wg.Add(1)
			go func() { defer wg.Done(); object(n) }()
		}
		for _, n := range unlisted {
			if !late[n] {
				wg.Add(1)
				go func() { defer wg.Done(); object(n) }()
			}
		}
		wg.Wait()
		specs := map[string]string{}
		for _, n := range listed {
			specs["policy/"+n] = `{"policy":{"name":"` + n + `"}}`
		}
		var after sync.WaitGroup
		for _, n := range unlisted {
			if late[n] {
				after.Add(1)
				go func() { defer after.Done(); object(n) }()
			}
		}
		for _, o := range r.bundle(&plannedListing{specs: specs, warn: true}) {
			report(o.name)
		}
		after.Wait()
		for _, n := range listed {
			if reported[n] != 0 {
				t.Fatalf("seed %d: listed %s reported", seed, n)
			}
		}
		for _, n := range unlisted {
			if reported[n] != 1 {
				t.Fatalf("seed %d: unlisted %s reported %d times", seed, n, reported[n])
			}
		}
	}
}

// Two objects of one kind and name: the one the bundle's map does not hold
// is reported, and the warning says why.
func TestRegistryShadowedObject(t *testing.T) {
	r := newRegistry()
	r.object("mask", "email", `{"mask":{"name":"email","method":"redact"}}`)
	r.object("mask", "email", `{"mask":{"name":"email","method":"partial"}}`)
	got := r.bundle(&plannedListing{specs: map[string]string{"mask/email": `{"mask":{"name":"email","method":"partial"}}`}, warn: true})
	if len(got) != 1 || got[0].spec != `{"mask":{"name":"email","method":"redact"}}` {
		t.Fatalf("reported %+v", got)
	}
	if summary, _ := r.unlisted(got); summary != `Two gatehouse_mask objects are named "email"` {
		t.Errorf("summary %q", summary)
	}
}

// A bundle that does not report, or whose objects are unknown, reports
// nothing, and no object reports itself on its account.
func TestRegistryQuietBundles(t *testing.T) {
	r := newRegistry()
	r.object("policy", "x", "")
	if got := r.bundle(&plannedListing{specs: map[string]string{}, warn: false}); len(got) != 0 {
		t.Fatalf("a quiet bundle reported %+v", got)
	}
	if r.object("policy", "y", "") {
		t.Fatal("an object reported itself after a quiet bundle")
	}
	r2 := newRegistry()
	r2.object("policy", "x", "")
	if got := r2.bundle(&plannedListing{all: true, warn: true}); len(got) != 0 {
		t.Fatalf("a bundle of unknown objects reported %+v", got)
	}
	if r2.object("policy", "y", "") {
		t.Fatal("an object reported itself after a bundle of unknown objects")
	}
	var nilRegistry *registry
	if nilRegistry.object("policy", "z", "") || nilRegistry.bundle(&plannedListing{warn: true}) != nil {
		t.Fatal("an unconfigured provider reports")
	}
}
