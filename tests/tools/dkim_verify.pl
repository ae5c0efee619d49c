#!/usr/bin/perl
# An independent DKIM verifier for the tests: Perl's Mail::DKIM, not dkimpy (which the relay signs with),
# with DNS answered only from a key file, so a test never depends on, or leaks to, the real DNS.
#
#   perl tests/tools/dkim_verify.pl --keys KEYFILE [--require-domain D] [--lf-to-crlf] < message.eml
#
# KEYFILE: one record a line, "selector._domainkey.domain TXT-record-text"; the text may also be given as
# zone-file quoted strings ("v=DKIM1; k=rsa; " "p=MIIB..."), which are joined. Blank and # lines are ignored.
#
# Output: one JSON line per signature {"domain","selector","algorithm","result","detail"}, then
# {"result": "pass"|"fail"|"none"}. Exit 0 only if there is at least one signature, every signature
# passes, and (with --require-domain) one of them is by D; 1 otherwise; 2 for usage errors.
#
# Debian 12 ships Mail::DKIM 1.20230212, which predates Ed25519; when the installed Mail::DKIM lacks it,
# ed25519-sha256 (RFC 8463) is added below on top of Mail::DKIM's own parsing and canonicalisation,
# with CryptX's Crypt::PK::Ed25519 doing the signature check.
use strict;
use warnings;

use Getopt::Long qw(GetOptions);
use JSON::PP ();
use MIME::Base64 qw(decode_base64);
use Mail::DKIM::DNS;
use Mail::DKIM::PublicKey;
use Mail::DKIM::Signature;
use Mail::DKIM::Verifier;
use Net::DNS;

binmode STDIN;
binmode STDOUT, ':raw';

my ( $keyfile, $require_domain, $lf_to_crlf );
GetOptions(
    'keys=s'           => \$keyfile,
    'require-domain=s' => \$require_domain,
    'lf-to-crlf'       => \$lf_to_crlf,
) or usage();
usage() unless defined $keyfile && !@ARGV;

sub usage {
    print STDERR "usage: $0 --keys KEYFILE [--require-domain D] [--lf-to-crlf] < message.eml\n";
    exit 2;
}

# --- DNS from the key file only -------------------------------------------------------------------

sub normalise_name {
    my ($name) = @_;
    $name = lc $name;
    $name =~ s/\.$//;
    return $name;
}

sub read_keys {
    my ($path) = @_;
    open my $fh, '<', $path or do { print STDERR "cannot read $path: $!\n"; exit 2 };
    my %records;
    while ( my $line = <$fh> ) {
        $line =~ s/\r?\n\z//;
        next if $line =~ /^\s*(?:#|$)/;
        my ( $name, $text ) = $line =~ /^\s*(\S+)\s+(.*?)\s*$/
          or do { print STDERR "$path:$.: expected 'NAME TXT-TEXT'\n"; exit 2 };
        if ( $text =~ /^"/ ) {
            my @parts = $text =~ /"((?:[^"\\]|\\.)*)"/g;
            $text = join '', @parts;
        }
        push @{ $records{ normalise_name($name) } }, $text;
    }
    return \%records;
}

# Stands in for Net::DNS::Resolver: Mail::DKIM::DNS::query calls send() and, on an empty answer,
# errorstring(). Names not in the file are NXDOMAIN, so a typo in a test shows up as "no key".
package StubResolver {

    sub new {
        my ( $class, $records ) = @_;
        return bless { records => $records, error => 'NOERROR' }, $class;
    }

    sub send {
        my ( $self, $name, $type, $class ) = @_;
        my $packet = Net::DNS::Packet->new( $name, $type // 'A', $class // 'IN' );
        $packet->header->qr(1);
        my $texts = $self->{records}{ main::normalise_name($name) };
        if ( !$texts ) {
            $packet->header->rcode('NXDOMAIN');
        }
        elsif ( uc( $type // '' ) eq 'TXT' ) {
            for my $text (@$texts) {

                # A TXT character-string holds at most 255 octets (RFC 1035 §3.3); long keys are split
                # the way a real zone carries them, and Mail::DKIM must join them again.
                my @strings = length $text ? ( $text =~ /(.{1,255})/gs ) : ('');
                $packet->push(
                    answer => Net::DNS::RR->new(
                        name    => $name,
                        type    => 'TXT',
                        ttl     => 300,
                        txtdata => \@strings,
                    )
                );
            }
        }
        $self->{error} = 'NOERROR';
        return $packet;
    }

    sub query { my $self = shift; return $self->send(@_) }
    sub search { my $self = shift; return $self->send(@_) }

    sub bgsend {
        my $self = shift;
        return $self->send(@_);
    }
    sub bgread { my ( $self, $handle ) = @_; return $handle }
    sub bgbusy { return 0 }
    sub errorstring { return $_[0]{error} }
}

# --- ed25519-sha256 (RFC 8463) for a Mail::DKIM that lacks it ---------------------------------------

# Mail::DKIM's verifier asks the key for cork->size (a key-length policy); Crypt::PK::Ed25519 has none.
package Ed25519Cork {
    sub new  { my ( $class, $pk ) = @_; return bless { pk => $pk }, $class }
    sub pk   { return $_[0]{pk} }
    sub size { return 32 }
}

package Ed25519Sha256Algorithm {

    # Same SHA-256 header and body digests and canonicalisation as rsa-sha256; only the signature differs.
    use parent -norequire, 'Mail::DKIM::Algorithm::rsa_sha256';

    sub sign { die "ed25519-sha256 signing is not supported here: this is a verifier\n" }

    sub verify {
        my $self = shift;
        my $key  = $self->signature->get_public_key;
        my $type = $key->get_tag('k') // 'rsa';
        if ( $type ne 'ed25519' ) {
            $self->{verification_details} = "key type k=$type does not match a=ed25519-sha256";
            return;
        }
        my $signature = MIME::Base64::decode_base64( $self->signature->data // '' );

        # RFC 8463 §3: the Ed25519 (PureEdDSA) input is the SHA-256 digest of the canonicalised header
        # data, not the header data itself.
        my $digest = $self->{header_digest}->digest;
        if ( !$key->cork->pk->verify_message( $signature, $digest ) ) {
            $self->{verification_details} = 'bad Ed25519 signature';
            return;
        }
        return $self->check_body_hash;
    }
}

package main;

sub add_ed25519_support {
    require Crypt::PK::Ed25519;
    no warnings 'redefine';

    my $algorithm_class = \&Mail::DKIM::Signature::get_algorithm_class;
    *Mail::DKIM::Signature::get_algorithm_class = sub {
        my ( $self, $algorithm ) = @_;
        return 'Ed25519Sha256Algorithm' if defined $algorithm && $algorithm eq 'ed25519-sha256';
        return $algorithm_class->(@_);
    };

    my $hash_algorithm = \&Mail::DKIM::Signature::hash_algorithm;
    *Mail::DKIM::Signature::hash_algorithm = sub {
        my ($self) = @_;
        return 'sha256' if ( $self->algorithm // '' ) eq 'ed25519-sha256';
        return $hash_algorithm->(@_);
    };

    # An RSA signature checked against a k=ed25519 key must fail, not die inside the RSA code.
    my $verify_digest = \&Mail::DKIM::PublicKey::verify_digest;
    *Mail::DKIM::PublicKey::verify_digest = sub {
        my ($self) = @_;
        if ( ref $self->cork eq 'Ed25519Cork' ) {
            $@ = 'key type k=ed25519 does not match an RSA signature';
            return;
        }
        return $verify_digest->(@_);
    };

    # The 1.20230212 key check accepts k=rsa only. For k=ed25519 apply the same rules (RFC 6376 §3.6.1)
    # with RFC 8463 §4's key format: p= is the bare 32-byte public key in base64.
    my $check = \&Mail::DKIM::PublicKey::check;
    *Mail::DKIM::PublicKey::check = sub {
        my ($self) = @_;
        my $type = $self->get_tag('k');
        return $check->(@_) unless defined $type && $type eq 'ed25519';

        my $v = $self->get_tag('v');
        die "unsupported version\n" if $v && $v ne 'DKIM1';
        $self->granularity;
        my $p = $self->data;
        die "missing p= tag\n" unless defined $p;
        die "revoked\n" if $p eq '';
        die "invalid data\n" unless $p =~ /^[A-Za-z0-9+\/=]+$/;
        my $raw = decode_base64($p);
        die 'invalid Ed25519 key: ' . length($raw) . " octets, not 32\n" unless length $raw == 32;
        my $pk = Crypt::PK::Ed25519->new;
        eval { $pk->import_key_raw( $raw, 'public' ); 1 } or die "invalid Ed25519 key\n";
        $self->cork( Ed25519Cork->new($pk) );

        if ( my $s = $self->get_tag('s') ) {
            die "does not support email\n" unless grep { $_ eq '*' || $_ eq 'email' } split /:/, $s;
        }
        return 1;
    };
}

add_ed25519_support() unless Mail::DKIM::Signature->get_algorithm_class('ed25519-sha256');

# --- verify ---------------------------------------------------------------------------------------

Mail::DKIM::DNS::resolver( StubResolver->new( read_keys($keyfile) ) );

my $message = do { local $/; <STDIN> };
$message =~ s/(?<!\r)\n/\r\n/g if $lf_to_crlf;

my $verifier = Mail::DKIM::Verifier->new;
$verifier->PRINT($message);
$verifier->CLOSE;

my $json = JSON::PP->new->canonical;
my @signatures = $verifier->signatures;
my $all_pass = @signatures > 0;
my $domain_pass = !defined $require_domain;
for my $signature (@signatures) {
    my $result = $signature->result // 'none';
    my $detail = $signature->result_detail // '';
    # result_detail is "result (why)"; keep only the why.
    $detail = $1 if $detail =~ /^\Q$result\E \((.*)\)$/s;
    $detail = '' if $detail eq $result;
    print $json->encode(
        {
            domain    => $signature->domain,
            selector  => $signature->selector,
            algorithm => $signature->algorithm,
            result    => $result,
            detail    => $detail,
        }
    ), "\n";
    $all_pass = 0 if $result ne 'pass';
    $domain_pass = 1
      if defined $require_domain && $result eq 'pass' && lc( $signature->domain // '' ) eq lc $require_domain;
}

my $overall = !@signatures ? 'none' : ( $all_pass && $domain_pass ) ? 'pass' : 'fail';
my %summary = ( result => $overall );
$summary{detail} = "no passing signature by $require_domain" if @signatures && $all_pass && !$domain_pass;
print $json->encode( \%summary ), "\n";
exit( $overall eq 'pass' ? 0 : 1 );
