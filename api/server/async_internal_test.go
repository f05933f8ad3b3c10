package server

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/qsnapd/qsnapd/driver"
)

func TestDeleteRequest(t *testing.T) {
	for _, tc := range []struct {
		query   string
		want    driver.DeleteRequest
		wantErr bool
	}{
		{"", driver.DeleteRequest{}, false},
		{"metadata-only=true", driver.DeleteRequest{Flags: driver.DeleteMetadataOnly}, false},
		{"metadata-only", driver.DeleteRequest{Flags: driver.DeleteMetadataOnly}, false},
		{"metadata-only=0&children=1", driver.DeleteRequest{Flags: driver.DeleteChildren}, false},
		{"children-only=true&bandwidth=1048576", driver.DeleteRequest{Flags: driver.DeleteChildrenOnly, Bandwidth: 1 << 20}, false},
		{"flags=2", driver.DeleteRequest{Flags: driver.DeleteMetadataOnly}, false},
		{"flags=1&children-only", driver.DeleteRequest{Flags: driver.DeleteChildren | driver.DeleteChildrenOnly}, false}, // the driver refuses it
		{"async=true&bandwidth=0", driver.DeleteRequest{}, false},
		{"flags=8", driver.DeleteRequest{}, true},
		{"flags=-1", driver.DeleteRequest{}, true},
		{"flags=two", driver.DeleteRequest{}, true},
		{"bandwidth=1M", driver.DeleteRequest{}, true},
		{"bandwidth=-5", driver.DeleteRequest{}, true},
		{"bandwidth=1&bandwidth=2", driver.DeleteRequest{}, true},
		{"children=yes", driver.DeleteRequest{}, true},
		{"children&children", driver.DeleteRequest{}, true},
		{"metadata_only=true", driver.DeleteRequest{}, true},
		{"current", driver.DeleteRequest{}, true},
	} {
		q, err := url.ParseQuery(tc.query)
		if err != nil {
			t.Fatal(err)
		}
		got, err := deleteRequest(q)
		if (err != nil) != tc.wantErr || err == nil && got != tc.want {
			t.Errorf("%q: got %+v, %v; want %+v (error %v)", tc.query, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestAsyncOf(t *testing.T) {
	for _, tc := range []struct {
		name    string
		query   string
		prefer  []string
		body    bool
		want    bool
		wantErr bool
	}{
		{name: "nothing"},
		{name: "body", body: true, want: true},
		{name: "query", query: "async=true", want: true},
		{name: "bare query", query: "async", want: true},
		{name: "query false", query: "async=0"},
		{name: "query false, body true", query: "async=false", body: true, want: true},
		{name: "bad query", query: "async=soon", wantErr: true},
		{name: "Prefer", prefer: []string{"respond-async"}, want: true},
		{name: "Prefer among others", prefer: []string{"return=minimal, Respond-Async ; x=1"}, want: true},
		{name: "Prefer twice", prefer: []string{"wait=5", "respond-async"}, want: true},
		{name: "other Prefer", prefer: []string{"wait=5, respond-asyncish"}},
	} {
		r := &http.Request{URL: &url.URL{RawQuery: tc.query}, Header: http.Header{}}
		for _, p := range tc.prefer {
			r.Header.Add("Prefer", p)
		}
		got, err := asyncOf(r, tc.body)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("%s: got %v, %v; want %v (error %v)", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}
