package hclconfig

import (
	"fmt"

	"github.com/hashicorp/hcl/v2"
	"github.com/hashicorp/hcl/v2/hclsyntax"
)

// MaxNesting bounds how deeply brackets, braces, parentheses, quotes and
// template sequences may nest in a policy file. HCL's parser recurses once
// per level with no limit of its own (hashicorp/hcl#809), so a 60 KB file of
// "[" overflows the goroutine stack: a fatal error that no recover catches,
// in the CLI, in CI, and in a Terraform provider. No policy needs more than
// a handful of levels.
const MaxNesting = 256

// CheckNesting lexes src (the lexer does not recurse) and reports the first
// place where nesting exceeds MaxNesting. Anything that hands a file to
// HCL's parser (the loader, gatehouse fmt) calls it first.
func CheckNesting(src []byte, filename string) *hcl.Diagnostic {
	toks, _ := hclsyntax.LexConfig(src, filename, hcl.InitialPos)
	depth := 0
	for _, t := range toks {
		switch t.Type {
		case hclsyntax.TokenOBrace, hclsyntax.TokenOBrack, hclsyntax.TokenOParen,
			hclsyntax.TokenOQuote, hclsyntax.TokenOHeredoc,
			hclsyntax.TokenTemplateInterp, hclsyntax.TokenTemplateControl:
			depth++
			if depth > MaxNesting {
				rng := t.Range
				return &hcl.Diagnostic{
					Severity: hcl.DiagError,
					Summary:  "Nesting too deep",
					Detail:   fmt.Sprintf("brackets, braces, quotes and templates nest more than %d levels deep here; no policy needs that, and deeper input cannot be parsed safely", MaxNesting),
					Subject:  &rng,
				}
			}
		case hclsyntax.TokenCBrace, hclsyntax.TokenCBrack, hclsyntax.TokenCParen,
			hclsyntax.TokenCQuote, hclsyntax.TokenCHeredoc, hclsyntax.TokenTemplateSeqEnd:
			if depth > 0 {
				depth--
			}
		}
	}
	return nil
}
