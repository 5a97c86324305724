package sqlfacts

import "testing"

func TestCanonicalHash(t *testing.T) {
	base := "INSERT INTO payments (order_id, amount) VALUES (1, 10.00)"
	same := []string{
		"insert into payments (order_id, amount) values (1, 10.00)",
		"INSERT INTO payments(order_id,amount)\n  VALUES (1, 10.00) -- settle order 1",
		"/* ticket 42 */ INSERT INTO payments (order_id, amount) VALUES (1, 10.00);",
	}
	different := []string{
		"INSERT INTO payments (order_id, amount) VALUES (1, 10.01)",
		"INSERT INTO payments (order_id, amount) VALUES (2, 10.00)",
		"INSERT INTO public.payments (order_id, amount) VALUES (1, 10.00)",
		"INSERT INTO payments (amount, order_id) VALUES (1, 10.00)",
		"INSERT INTO payments (order_id, amount) VALUES (1, 10.00); SELECT 1",
		"INSERT INTO payments (order_id, amount) VALUES (1, '10.00')",
	}
	want, err := CanonicalHash(base)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range same {
		got, err := CanonicalHash(s)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("%q hashes unlike %q", s, base)
		}
	}
	for _, s := range different {
		got, err := CanonicalHash(s)
		if err != nil {
			t.Fatal(err)
		}
		if got == want {
			t.Errorf("%q hashes like %q", s, base)
		}
	}
	if _, err := CanonicalHash("INSERT INTO"); err == nil {
		t.Error("unparseable text hashed")
	}
	if _, err := CanonicalHash("SELECT 1\x00; DROP TABLE x"); err == nil {
		t.Error("text with a NUL hashed")
	}
}

func TestDeparseShowsWhatRuns(t *testing.T) {
	got, err := Deparse("UPDATE accounts SET balance = 0 /*\rSELECT 1 -- monthly report */ WHERE id = 7")
	if err != nil {
		t.Fatal(err)
	}
	if got != "UPDATE accounts SET balance = 0 WHERE id = 7" {
		t.Errorf("got %q", got)
	}
}
