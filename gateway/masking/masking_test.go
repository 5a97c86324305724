package masking

import "testing"

func TestApply(t *testing.T) {
	tests := []struct{ method, in, want string }{
		{"redact", "4111 1111 1111 1111", Redacted},
		{"partial", "jane.doe@example.com", "j***@example.com"},
		{"partial", "4111 1111 1111 1111", "**** **** **** 1111"},
		{"partial", "4111111111111111", "************1111"},
		{"partial", "Secret", "S****t"},
		{"partial", "ab", "**"},
		{"unknown", "x", Redacted},
	}
	for _, tc := range tests {
		if got := string(Apply(tc.method, []byte(tc.in), nil)); got != tc.want {
			t.Errorf("Apply(%s, %q) = %q, want %q", tc.method, tc.in, got, tc.want)
		}
	}
	if Apply("null", []byte("x"), nil) != nil {
		t.Error("null must give SQL NULL")
	}
	a := string(Apply("hash", []byte("jane@example.com"), []byte("k1")))
	b := string(Apply("hash", []byte("jane@example.com"), []byte("k1")))
	c := string(Apply("hash", []byte("jane@example.com"), []byte("k2")))
	if a != b || a == c || len(a) != len("hmac:")+32 {
		t.Errorf("hash: %q %q %q", a, b, c)
	}
}

func TestDetect(t *testing.T) {
	tests := []struct {
		detector, in string
		want         bool
	}{
		{"email", "contact: jane@example.com", true},
		{"email", "no address here", false},
		{"card_number", "4111 1111 1111 1111", true},
		{"card_number", "4111 1111 1111 1112", false}, // fails Luhn
		{"card_number", "order 12345", false},
		{"iban", "DE89 3704 0044 0532 0130 00", true},
		{"us_ssn", "123-45-6789", true},
		{"phone", "+1 415-555-0132", true},
		{"nope", "anything", false},
	}
	for _, tc := range tests {
		if got := Detect(tc.detector, []byte(tc.in)); got != tc.want {
			t.Errorf("Detect(%s, %q) = %v", tc.detector, tc.in, got)
		}
	}
}
