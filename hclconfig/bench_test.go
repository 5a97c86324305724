package hclconfig

import "testing"

func BenchmarkLoadQuickstart(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		res, diags := Load(quickstartDir)
		if diags.HasErrors() || res.Policy == nil {
			b.Fatalf("quickstart does not load: %s", dump(diags))
		}
	}
}
