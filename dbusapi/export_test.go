package dbusapi

// Settle waits until the inhibitor's lock is as its references want it,
// or its last attempt failed.
func (in *Inhibitor) Settle() {
	for {
		in.mu.Lock()
		w := in.worker
		in.mu.Unlock()
		if w == nil {
			return
		}
		<-w
	}
}

// NameOf is a kind's D-Bus error name.
var NameOf = nameOf
