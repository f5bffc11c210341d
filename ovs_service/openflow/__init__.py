"""OpenFlow: the numbers and structs (`ofproto`), messages, the connection to a
bridge, its state as modification messages (`state`) and table differences."""
